from quictund.cli import main

main()
