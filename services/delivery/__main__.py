from services.delivery.main import main

main()
