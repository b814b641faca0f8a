from kontur.cli import entry

entry()
