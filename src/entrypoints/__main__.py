from entrypoints.launch import main

raise SystemExit(main())
