//! Crypto core (being written).
