import sys

from manualbp.cli import main

sys.exit(main())
