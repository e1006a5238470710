"""The pages under ``/ui/``, one module per family: login, inbox (with one approval and its
vote), autonomy, audits, ledger. ``gateway.web.router`` assembles their routers."""
