from podfn.cli import main

main()
