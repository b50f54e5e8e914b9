import sys

from nertron.engine.cli import main

sys.exit(main())
