from genapi.cli import main

raise SystemExit(main())
