import sys

from grace_fast.cli import main

sys.exit(main())
