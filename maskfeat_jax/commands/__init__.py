"""Thin command-line mains: flags at module level, ``main(argv)`` and ``run()`` (the console
script). All logic lives in the library modules they call."""
