from services.enrichment.main import main

main()
