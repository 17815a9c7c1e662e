-- Demo rows, inserted THROUGH pgveil by the compose "seed" service, so the
-- encrypted columns reach PostgreSQL as ciphertext. Safe to run again.
INSERT INTO customers (id, full_name, email, phone, birth_date, country) VALUES
    (1,  'Ada Lovelace',      'ada.lovelace@example.com',      '+44 20 7946 0001', '1815-12-10', 'UK'),
    (2,  'Grace Hopper',      'grace.hopper@example.com',      '+1 212 555 0102',  '1906-12-09', 'US'),
    (3,  'Alan Turing',       'alan.turing@example.com',       '+44 20 7946 0003', '1912-06-23', 'UK'),
    (4,  'Edsger Dijkstra',   'edsger.dijkstra@example.com',   '+31 20 555 0104',  '1930-05-11', 'NL'),
    (5,  'Barbara Liskov',    'barbara.liskov@example.com',    '+1 617 555 0105',  '1939-11-07', 'US'),
    (6,  'Margaret Hamilton', 'margaret.hamilton@example.com', '+1 617 555 0106',  '1936-08-17', 'US'),
    (7,  'Niklaus Wirth',     'niklaus.wirth@example.com',     '+41 44 555 0107',  '1934-02-15', 'CH'),
    (8,  'Radia Perlman',     'radia.perlman@example.com',     '+1 425 555 0108',  '1951-12-18', 'US'),
    (9,  'Sophie Wilson',     'sophie.wilson@example.com',     '+44 1223 555 009', '1957-06-01', 'UK'),
    (10, 'Hedy Lamarr',       'hedy.lamarr@example.com',       '+43 1 555 0110',   '1914-11-09', 'AT')
ON CONFLICT (id) DO NOTHING;

SELECT count(*) AS customers FROM customers;
