from genapi.cli import entry

raise SystemExit(entry())
