//! `SELECT *` over joins with `USING`: PostgreSQL lists each merged column
//! once, first, then the left side's other columns, then the right side's
//! (for each join in turn), so the output positions pgveil decrypts by
//! (COPY, origin-less results) must follow the same order.

use super::relations::{has_encrypted_source, wildcard};
use super::{Class, Out, R, Rel, UsingJoin};
use crate::sql::refusal::Refusal;

/// One output column of the star and where it comes from.
struct Entry {
    /// The relation it comes from, or `None` for a merged column.
    from: Option<String>,
    /// The FROM item of the join that merged it.
    merged_in: Option<usize>,
    out: Out,
}

/// The columns of `*` over `rels`, the joins with `USING` among them
/// applied in order.
pub(super) fn star(rels: &[Rel<'_>], joins: &[&UsingJoin]) -> R<Vec<Out>> {
    let mut entries = Vec::new();
    let mut unknown = false;
    for rel in rels {
        let mut outs = Vec::new();
        wildcard(rel, &mut outs)?;
        unknown |=
            outs.iter().any(|o| o.name == "*") && joins.iter().any(|j| touches(j, &rel.name));
        entries.extend(outs.into_iter().map(|out| Entry {
            from: Some(rel.name.clone()),
            merged_in: None,
            out,
        }));
    }
    if unknown {
        // A side whose columns pgveil does not know: their order cannot be
        // followed, which matters only where something is encrypted.
        if rels.iter().any(has_encrypted_source) {
            return Err(unmodelled());
        }
        return Ok(entries.into_iter().map(|e| e.out).collect());
    }
    for join in joins {
        entries = apply(entries, join)?;
    }
    Ok(entries.into_iter().map(|e| e.out).collect())
}

fn touches(join: &UsingJoin, rel: &str) -> bool {
    join.right == rel || join.left.iter().any(|l| l == rel)
}

fn unmodelled() -> Refusal {
    Refusal::general(
        "`*` over a JOIN ... USING whose columns pgveil cannot list, with encrypted columns \
         (list the columns)",
        "unsupported",
    )
}

/// Applies one join: merged columns first, then the rest of the left side,
/// then the rest of the right side, in place of both sides.
fn apply(entries: Vec<Entry>, join: &UsingJoin) -> R<Vec<Entry>> {
    let is_left = |e: &Entry| match (&e.from, e.merged_in) {
        (Some(r), _) => join.left.contains(r),
        (None, Some(item)) => item == join.item,
        (None, None) => false,
    };
    let is_right = |e: &Entry| e.from.as_deref() == Some(join.right.as_str());
    let first = entries.iter().position(|e| is_left(e) || is_right(e));
    let last = entries.iter().rposition(|e| is_left(e) || is_right(e));
    let (Some(first), Some(last)) = (first, last) else {
        return Ok(entries);
    };
    let mut before = Vec::new();
    let mut side = Vec::new();
    let mut after = Vec::new();
    for (i, e) in entries.into_iter().enumerate() {
        if i < first {
            before.push(e);
        } else if i > last {
            after.push(e);
        } else {
            side.push(e);
        }
    }
    if side.iter().any(|e| !is_left(e) && !is_right(e)) {
        return Err(unmodelled());
    }
    let mut merged = Vec::new();
    for col in &join.columns {
        let l = take_one(&mut side, col, &is_left)?;
        let r = take_one(&mut side, col, &is_right)?;
        let class = match (l.out.class, r.out.class) {
            (Class::Enc { col: a, .. }, Class::Enc { col: b, .. }) => {
                if a.domain != b.domain {
                    return Err(unmodelled());
                }
                // Reported without an origin after a FULL or RIGHT join
                // (COALESCE): the positional hint decrypts it; where
                // PostgreSQL reports an origin, the origin does.
                Class::Enc {
                    col: a,
                    direct: false,
                }
            }
            (Class::Enc { .. }, _) | (_, Class::Enc { .. }) => return Err(unmodelled()),
            _ => Class::Plain,
        };
        merged.push(Entry {
            from: None,
            merged_in: Some(join.item),
            out: Out {
                name: col.clone(),
                class,
            },
        });
    }
    let (left, right): (Vec<Entry>, Vec<Entry>) = side.into_iter().partition(|e| is_left(e));
    Ok(before
        .into_iter()
        .chain(merged)
        .chain(left)
        .chain(right)
        .chain(after)
        .collect())
}

/// Removes and returns the one entry named `col` on a side.
fn take_one(side: &mut Vec<Entry>, col: &str, on: &dyn Fn(&Entry) -> bool) -> R<Entry> {
    let found: Vec<usize> = side
        .iter()
        .enumerate()
        .filter(|(_, e)| on(e) && e.out.name == col)
        .map(|(i, _)| i)
        .collect();
    match found.as_slice() {
        [i] => Ok(side.remove(*i)),
        _ => Err(unmodelled()),
    }
}
