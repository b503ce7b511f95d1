-- Results are read back in chunks (substring over bytea) so the API never
-- holds a whole one in memory. Stored compressed, each chunk would make
-- Postgres decompress the value from its start; stored uncompressed
-- (EXTERNAL, still out of line in TOAST) a chunk read fetches only its slice.
-- Pickles of large values are mostly already dense; the disk cost is small.
-- Applies to rows written from now on.
ALTER TABLE podfn_calls
    ALTER COLUMN result SET STORAGE EXTERNAL,
    ALTER COLUMN error_pickle SET STORAGE EXTERNAL;
