import sys

from podfn_runtime.main import main

sys.exit(main())
