import sys

from gpumix.cli import main

sys.exit(main())
