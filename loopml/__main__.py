import sys

from loopml.cli import main

sys.exit(main())
