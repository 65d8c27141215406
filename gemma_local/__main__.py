from gemma_local.cli import main

main()
