import sys

from e2e.models import main

sys.exit(main())
