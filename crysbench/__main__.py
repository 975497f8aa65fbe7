from crysbench.cli import main

raise SystemExit(main())
