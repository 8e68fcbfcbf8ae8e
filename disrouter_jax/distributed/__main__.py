import sys

from disrouter_jax.distributed.selftest import main

sys.exit(main())
