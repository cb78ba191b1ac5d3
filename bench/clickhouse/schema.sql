-- bench/query.sh's ClickHouse tables, loaded from `query export-events|export-sessions` (TSV,
-- columns in this order). Modelled on Plausible's events_v2 / sessions_v2: the same sort keys
-- (site, day, ...), monthly partitions, visit attributes copied onto every event. String
-- instead of LowCardinality(String): Debian's ClickHouse 18.16 has it only as experimental.
CREATE TABLE events (
    site_id UInt64,
    session_id UInt64,
    visitor UInt64,
    timestamp DateTime,
    name String,
    pathname String,
    hostname String,
    referrer String,
    source String,
    channel String,
    utm_source String,
    utm_medium String,
    utm_campaign String,
    utm_content String,
    utm_term String,
    device String,
    browser String,
    browser_version String,
    os String,
    os_version String,
    country String,
    region String,
    city String,
    prop_keys Array(String),
    prop_values Array(String),
    revenue_micros Int64,
    currency String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(timestamp)
ORDER BY (site_id, toDate(timestamp), name, visitor, timestamp);

CREATE TABLE sessions (
    site_id UInt64,
    session_id UInt64,
    visitor UInt64,
    start DateTime,
    timestamp DateTime,
    duration_ms UInt64,
    pageviews UInt32,
    events UInt32,
    is_bounce UInt8,
    entry_page String,
    exit_page String,
    source String,
    referrer String,
    channel String,
    utm_source String,
    utm_medium String,
    utm_campaign String,
    utm_content String,
    utm_term String,
    device String,
    browser String,
    browser_version String,
    os String,
    os_version String,
    country String,
    region String,
    city String
) ENGINE = MergeTree()
PARTITION BY toYYYYMM(start)
ORDER BY (site_id, toDate(start), visitor, session_id);
