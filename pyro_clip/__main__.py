import sys

from pyro_clip.cli import main

sys.exit(main())
