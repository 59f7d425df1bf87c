"""Commands: the command line, one function per subcommand, and the tables it prints.

May import: every room.
"""
