// loopml dashboard: the small behaviours pages opt into (no inline script: the CSP forbids it).
// Pages add their own sections below, each guarded by an element that only that page has.
