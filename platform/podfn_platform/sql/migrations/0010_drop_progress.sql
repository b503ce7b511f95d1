-- The runtime protocol loses `progress`: since migration 0007 a running call's
-- output goes to podfn_output as chunks (append_output), which readers
-- follow, and the stdout/stderr columns are filled only with the outcome
-- (succeed/fail). Nothing calls `progress` any more; a function the runtime
-- role may execute and nobody needs is attack surface for code inside a call
-- (docs/security.md), so it goes.
DROP FUNCTION podfn_runtime_v1.progress(text, integer, text, text, text);
