from jigsawkit.cli import main

raise SystemExit(main())
