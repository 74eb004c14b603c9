import sys

from expandsearch.cli import main

sys.exit(main())
