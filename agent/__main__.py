"""``python -m agent``: run libnet-agent."""

import sys

from agent.daemon import main

sys.exit(main())
