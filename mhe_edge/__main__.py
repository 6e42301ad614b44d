from mhe_edge.cli import main

main()
