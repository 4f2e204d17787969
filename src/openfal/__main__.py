from openfal.cli.main import main

main()
