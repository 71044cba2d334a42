"""Stand-in for the get-pip.py that ansible-test downloads from a host we cannot reach.

ansible-test runs this file as ``__main__`` inside a fresh venv without pip, with
pip-install arguments. We bootstrap the pip that ships with Python (ensurepip),
then let that pip install what was asked for from the package index.
"""

import ensurepip
import os
import subprocess
import sys

# get-pip.py specific flags that pip itself does not know
GET_PIP_ONLY = {"--no-setuptools", "--no-wheel"}

# ensurepip points PIP_CONFIG_FILE at /dev/null for its own run: keep the caller's
# environment (and so the machine's pip configuration) for the real install.
environment = dict(os.environ)
ensurepip.bootstrap()
arguments = [arg for arg in sys.argv[1:] if arg not in GET_PIP_ONLY]
sys.exit(subprocess.call([sys.executable, "-m", "pip", "install", *arguments], env=environment))
