from modelshelf.cli import main

raise SystemExit(main())
