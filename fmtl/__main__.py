from fmtl.cli import main

main()
