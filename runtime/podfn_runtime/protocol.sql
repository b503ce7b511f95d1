-- The runtime's calls to Postgres: the runtime protocol, version 1.
--
-- The runtime role may execute these functions and nothing else (migration
-- 0003_runtime_protocol.sql defines them; docs/security.md says why). Each
-- takes the attempt's secret and does nothing unless it is the live secret
-- of the call's current attempt. Plain statements with no session state, so
-- they work through PgBouncer in transaction pooling mode.

-- name: claim
SELECT id, attempt, function, function_digest, args, spec, client_python,
       client_cloudpickle, result_format
FROM podfn_runtime_v1.claim(%(id)s, %(attempt)s, %(secret)s);

-- name: succeed
SELECT id, attempt, state
FROM podfn_runtime_v1.succeed(%(id)s, %(attempt)s, %(secret)s, %(result)s, %(result_json)s,
                              %(stdout)s, %(stderr)s);

-- name: fail
SELECT id, attempt, state
FROM podfn_runtime_v1.fail(%(id)s, %(attempt)s, %(secret)s, %(retryable)s, %(reason)s,
                           %(error_type)s, %(error_message)s, %(error_traceback)s,
                           %(error_pickle)s, %(stdout)s, %(stderr)s);

-- name: record
-- After a lost reply: the state of this attempt and of its call.
SELECT id, attempt, call_state, attempt_state
FROM podfn_runtime_v1.record(%(id)s, %(attempt)s, %(secret)s);

-- name: claimed
-- After a lost reply to `claim`: what it returned, if the claim landed.
SELECT id, attempt, function, function_digest, args, spec, client_python,
       client_cloudpickle, result_format
FROM podfn_runtime_v1.claimed(%(id)s, %(attempt)s, %(secret)s);

-- name: usage
SELECT podfn_runtime_v1.usage(%(id)s, %(attempt)s, %(secret)s, %(peak_bytes)s,
                              %(cpu_seconds)s, %(wall_seconds)s) AS written;

-- name: append_output
-- One chunk of the running call's output (migration 0007); idempotent by offset.
SELECT podfn_runtime_v1.append_output(%(id)s, %(attempt)s, %(secret)s, %(stream)s,
                                      %(offset)s, %(data)s) AS written;

-- name: yield_item
-- One item a generator yielded (migration 0007); idempotent by index.
SELECT podfn_runtime_v1.yield_item(%(id)s, %(attempt)s, %(secret)s, %(index)s, %(data)s)
    AS written;

-- name: next
-- A warm worker: the next queued call of its pool (migration 0008), claimed
-- with the secret of the attempt it ran last; a fresh secret's hash for it.
SELECT verdict, id, attempt, function, function_digest, args, spec, client_python,
       client_cloudpickle, result_format
FROM podfn_runtime_v1.next(%(id)s, %(attempt)s, %(secret)s, %(secret_hash)s);

-- name: next_standing
-- A standing worker (migration 0009): the next queued call of its pool, asked
-- with the worker's own secret (minted by the controller; no call started it);
-- a fresh secret's hash for the call's attempt.
SELECT verdict, id, attempt, function, function_digest, args, spec, client_python,
       client_cloudpickle, result_format
FROM podfn_runtime_v1.next_standing(%(worker)s, %(worker_secret)s, %(secret_hash)s);

-- name: succeed_next
-- usage, succeed and (with a secret hash: a warm worker) next in one round trip
-- (migration 0011): the outcome's `state`, then `next`'s verdict and call.
SELECT state, verdict, id, attempt, function, function_digest, args, spec, client_python,
       client_cloudpickle, result_format
FROM podfn_runtime_v1.succeed_next(%(id)s, %(attempt)s, %(secret)s, %(result)s,
                                   %(result_json)s, %(stdout)s, %(stderr)s, %(peak_bytes)s,
                                   %(cpu_seconds)s, %(wall_seconds)s, %(secret_hash)s);

-- name: next_many
-- A warm worker: up to one call per secret hash of its pool, claimed at once
-- (migration 0012), in the order to run them (`ordinal`), held until
-- `succeed_many` marks them started. The function payload comes on the first row
-- only; only the first call's secret claims further. The hashes come as one JSON
-- array (database.py, `_pack`: psycopg dumps a list element by element in Python).
SELECT verdict, ordinal, id, attempt, function, function_digest, args, spec, client_python,
       client_cloudpickle, result_format
FROM podfn_runtime_v1.next_many(
    %(id)s, %(attempt)s, %(secret)s,
    ARRAY(SELECT x FROM jsonb_array_elements_text(%(secret_hashes)s::jsonb)
          WITH ORDINALITY AS t(x, n) ORDER BY n));

-- name: succeed_many
-- Start marks of held calls, several successes (usage included) and, with
-- next hashes, the next calls (as next_many) in one round trip (migration 0012).
-- Its arrays come as one JSON document (`batch`) and the pickled results as one
-- binary parameter (`results`), each outcome's [offset, length] in it or null
-- (database.py, `_pack`): psycopg dumped 14 arrays element by element in Python,
-- a quarter of a warm worker's CPU in a map of trivial calls. The arrays are
-- unpacked here, by the statement, in the order given (jsonb_to_record makes a
-- JSON array a Postgres array, null a NULL).
WITH b AS (SELECT %(batch)s::jsonb AS b, %(results)b::bytea AS r),
     p AS (SELECT p.* FROM b, jsonb_to_record(b.b) AS p(
         ids text[], attempts integer[], secrets text[], results_json text[],
         stdouts text[], stderrs text[], peak_bytes bigint[], cpu_seconds float8[],
         wall_seconds float8[], start_ids text[], start_attempts integer[],
         start_secrets text[], next_id text, next_attempt integer, next_secret text,
         next_hashes text[]))
SELECT f.kind, f.state, f.verdict, f.ordinal, f.id, f.attempt, f.function, f.function_digest,
       f.args, f.spec, f.client_python, f.client_cloudpickle, f.result_format
FROM b, p, podfn_runtime_v1.succeed_many(
    p.ids, p.attempts, p.secrets,
    ARRAY(SELECT substring(b.r FROM (x->>0)::integer + 1 FOR (x->>1)::integer)
          FROM jsonb_array_elements(b.b->'results') WITH ORDINALITY AS t(x, n) ORDER BY n),
    p.results_json, p.stdouts, p.stderrs, p.peak_bytes, p.cpu_seconds, p.wall_seconds,
    p.start_ids, p.start_attempts, p.start_secrets, p.next_id, p.next_attempt,
    p.next_secret, p.next_hashes) f;

