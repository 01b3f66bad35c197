import sys

from jaxvdm.bench import main

sys.exit(main())
