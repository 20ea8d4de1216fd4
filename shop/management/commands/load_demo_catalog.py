from decimal import Decimal

from django.core.management.base import BaseCommand

from shop.models import Product

DEMO_CATALOG = [
    ("MUG-001", "Enamel camping mug", "A 350 ml enamel mug that survives the campfire.", "12.90", 40),
    ("TEE-BLK-M", "Black T-shirt (M)", "Organic cotton, medium.", "19.90", 25),
    ("TEE-WHT-L", "White T-shirt (L)", "Organic cotton, large.", "19.90", 25),
    ("CAP-NAVY", "Navy cap", "Six-panel cotton cap with an adjustable strap.", "16.50", 30),
    ("BOT-750", "Steel bottle 750 ml", "Double-walled, keeps drinks cold for a day.", "24.00", 20),
    ("NB-A5-DOT", "Dotted notebook A5", "192 pages of 100 g paper.", "9.50", 60),
    ("PEN-FOUNT", "Fountain pen", "Steel nib, converter included.", "34.00", 15),
    ("BAG-TOTE", "Canvas tote bag", "Heavy canvas, long handles.", "14.00", 50),
    ("SOCK-WOOL", "Wool socks", "Merino blend, one pair.", "11.90", 45),
    ("LAMP-DESK", "Desk lamp", "LED, warm white, dimmable.", "49.00", 8),
    ("PLANT-POT", "Ceramic plant pot", "14 cm, with drainage hole and saucer.", "18.00", 12),
    ("COFFEE-1KG", "Coffee beans 1 kg", "Medium roast, whole beans.", "27.50", 3),
]


class Command(BaseCommand):
    help = "Load the demo catalog. Idempotent: existing products (and their stock) are left as they are."

    def handle(self, *args, **options) -> None:
        created = 0
        for sku, name, description, price, stock in DEMO_CATALOG:
            _, was_created = Product.objects.get_or_create(
                sku=sku,
                defaults={"name": name, "description": description, "price": Decimal(price), "stock": stock},
            )
            created += was_created
        self.stdout.write(
            f"Demo catalog: {created} product(s) created, {len(DEMO_CATALOG) - created} already there."
        )
