import sys

from numformer.cli import main

sys.exit(main())
