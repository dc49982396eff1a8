from ragapp.cli import main

main()
