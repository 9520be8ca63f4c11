from crn_repro.cli import main

main()
