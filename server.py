"""Run the Planchet server: the same as ``planchet serve`` (see ``planchet serve --help``)."""

import sys

from planchet.cli import main

if __name__ == "__main__":
    sys.exit(main(["serve", *sys.argv[1:]]))
