"""Post-processing of simulated signals.

Catalogue
---------
fit_signal        adaptive-degree polynomial fit of log|S| against b: ADC, kurtosis, S0
                  (SpinDoctor ``fit_signal`` / ``process_signal_poly``)
fit_adc_small_b   monoexponential (straight-line) ADC fit
fit_tensor        6-parameter least-squares diffusion tensor from directional ADCs
SignalFit         result of :func:`fit_signal`
"""

from .fit import SignalFit, fit_adc_small_b, fit_signal, fit_tensor

__all__ = ["SignalFit", "fit_adc_small_b", "fit_signal", "fit_tensor"]
