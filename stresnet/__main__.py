import sys

from .cli import main

if __name__ == "__main__":  # a spawned child (deploy.latency.isolated) imports this module without running the CLI
    sys.exit(main())
