from spoa_agent.cli.main import main

main()
