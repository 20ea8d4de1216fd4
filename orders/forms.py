from django import forms

from orders.gateways import FakeGateway


class CheckoutForm(forms.Form):
    email = forms.EmailField()
    name = forms.CharField(max_length=200)
    line1 = forms.CharField(label="Address", max_length=200)
    city = forms.CharField(max_length=100)
    postal_code = forms.CharField(max_length=20)
    country = forms.RegexField(
        regex=r"^[A-Za-z]{2}$",
        max_length=2,
        help_text="Two-letter code, e.g. DE",
        error_messages={"invalid": "Enter a two-letter country code."},
    )
    payment_token = forms.CharField(
        max_length=100,
        initial="tok_visa",
        help_text="Test cards: " + ", ".join(FakeGateway.HINT_TOKENS),
    )

    def clean_country(self) -> str:
        return self.cleaned_data["country"].upper()
