import sys

from alignsmith.cli import main

sys.exit(main())
