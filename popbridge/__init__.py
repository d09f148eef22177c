"""popbridge: a POP-before-SMTP bridge for Postfix, Sendmail and Exim.

The package by role, top to bottom of the import graph (the arrows are import-linter
contracts in setup.cfg, checked by scripts/test):

    cli/        the ``popbridge`` command (run, demo, check-config, control verbs, migrate-store)
    tap.py      the twistd plugin's options and service maker
    daemon/     settings -> service tree: listeners, store services, workers/, systemd readiness
    demo/       the toy POP3 server of ``popbridge demo`` (loaded only for a [demo] table)
    config/     TOML -> settings; every error names the file and the key
    proxy/ lookup/ feed/   Twisted glue: mail sessions; relay lookup sockets; Dovecot's feed
    verdict.py  ledger + directory -> authorised / exempt / unknown
    senders/    who owns which envelope sender (the map file, domains, LDAP attributes)
    directory/  IDirectory: the LDAP cache (reactor side) and the ldap3 search (thread side)
    metrics/    counters, Prometheus families and their HTTP endpoint
    tls/        certificates clients see, backend checks, SIGHUP reloads
    ledger/     ILedger and its stores (memory, SQLite, Redis)
    fast/       speed-ups below Twisted's public API (optional: the same, slower, without)
    wire/       sans-IO watchers and codecs; never imports Twisted
    log.py  addresses.py
    settings.py every configuration key as frozen dataclasses; imports nothing of popbridge
"""
