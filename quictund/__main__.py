from quictund.cli.main import main

main()
