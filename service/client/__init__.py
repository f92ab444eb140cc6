"""The lab's client side: a Python client of the REST API (``Client``, ``AsyncClient``),
the ``fpgalab`` command's client commands, and a pytest plugin. Installed without extras
(``pip install fpgalab``): it imports nothing of the lab's server side.
"""
