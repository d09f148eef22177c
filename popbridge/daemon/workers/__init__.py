"""Proxy workers (``[daemon] workers = N`` or ``"auto"``): mail sessions on every core, and
relay lookups that never wait behind them.

With ``workers = 0`` (the default) one process does everything, as it always did. Otherwise::

    mail clients ──POP3/IMAP──▶ :110 :143 :995 ...   (one listening socket per [[proxy]],
                                     │                bound by the main process, which never
                                     │                accepts on it; the kernel gives each new
                                     │                connection to the worker whose accept wins)
               ┌─────────────────────┼─────────────────────┐
               ▼                     ▼                     ▼
        ┌─────────────┐       ┌─────────────┐       ┌─────────────┐
        │  worker 1   │       │  worker 2   │  ...  │  worker N   │──▶ Dovecot / Courier / ...
        │ LoginProxy  │       │ LoginProxy  │       │ LoginProxy  │    (the backends)
        └──────┬──────┘       └──────┬──────┘       └──────┬──────┘
               │ AMP on each worker's stdin/stdout: Record (answered once stored),
               │ EndSession, Facts; Report (counters) and Start (settings) the other way
               ▼
        ┌──────────────────────────────────────────────────────────┐
        │ main process: ledger store · directory (LDAP) ·           │◀── Postfix / Exim / Sendmail:
        │ [[lookup]] policy, socketmap, WHOSON · [[feed]] ·         │    policy, socketmap, WHOSON
        │ [control] · [metrics] · spawns, restarts, drains workers  │◀── popbridge stats, Prometheus
        └──────────────────────────────────────────────────────────┘

Modules: `daemon` (the split service tree), `sockets` (the shared listening sockets), `fleet`
(spawning, back-off restarts, SIGHUP generations, SIGTERM drain, counter reports), `channel`
(the AMP commands and both ends), `remote` (a worker's ledger and directory: the main
process's, over the channel), `child` (the worker process), `settings` (what a worker is
told), `metrics` (``/metrics`` and ``popbridge stats`` over all processes).

Decisions an operator may want to know:

- Record before release holds across processes: a worker's login reaches its client only after
  the main process's store has it (SQLite: committed). If the main process cannot be reached,
  the client gets the protocol's temporary error (``-ERR [SYS/TEMP]``, ``* BYE``), never a yes.
- A worker killed by SIGKILL loses nothing that was recorded; the main process ends its open
  sessions (their addresses get ``ttl`` from then) and starts a new worker after 1 s (doubling
  to 60 s while it keeps dying). The other workers serve on.
- SIGHUP starts a new generation of workers with the new settings on the same sockets (no
  connection is refused), then drains the old one as SIGTERM would: its logged-in sessions get
  the listener's ``shutdown_grace`` to finish. A changed ``workers`` count needs a restart.
- ``/metrics`` and ``popbridge stats`` show each sample summed over all processes and once per
  worker with a ``worker`` label; worker counters are at most a second old. The sums keep what
  ended workers counted (they never go down); a ``worker`` series restarts from zero.
"""
