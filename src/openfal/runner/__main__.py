from openfal.runner.process import main

main()
