from webrtc_cast.cli import main

raise SystemExit(main())
